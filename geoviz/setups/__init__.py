"""What an application starts from: datasets (data.py), networks (models.py, zoo.py),
training and the start-network cache (training.py), task sequences (tasks.py), the
prepared problem (problem.py), and a user's own network, data, weights file or data
folder (own.py, weights.py, folders.py)."""
