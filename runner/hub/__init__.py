"""The Hugging Face Hub and the models on disk: the client, the catalog and search, remote headers,
recommendations, downloads, the store, the starter model."""
