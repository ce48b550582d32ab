"""`swarm batch`: many prompts, chats or texts to embed, spread over every replica or route of the swarm."""
