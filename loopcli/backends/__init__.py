"""Model backends behind one small interface (base.py): local runtime, llama.cpp, OpenAI-compatible HTTP, scripted."""
