from agent_image.agent import main

main()
