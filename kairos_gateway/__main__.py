from kairos_gateway.main import main

main()
