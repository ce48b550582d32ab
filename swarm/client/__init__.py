"""The compute client: model resolution, route planning, inference sessions over the swarm, generation."""
