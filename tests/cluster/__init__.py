"""The cluster suite: a three-node RabbitMQ cluster of its own (scripts/cluster.sh)."""
