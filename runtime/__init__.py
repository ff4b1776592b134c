"""Model config, checkpoint reading, the reference PLT forward and its decode paths."""
