from llmgen.cli.main import main

main()
