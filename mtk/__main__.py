from mtk.cli.app import main

main()
