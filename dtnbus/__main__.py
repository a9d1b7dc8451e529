from dtnbus.cli import main

main()
