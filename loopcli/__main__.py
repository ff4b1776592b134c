from loopcli.cli import main

main()
