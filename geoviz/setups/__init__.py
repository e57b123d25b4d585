"""What an application starts from when it is not a registry name: a user's own network,
data, weights file, a torchvision model, a data folder."""
