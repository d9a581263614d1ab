from giftrelay.cli import main

main()
