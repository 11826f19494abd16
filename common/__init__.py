"""What the server and the clients share: configuration, models, data, masks,
pruning methods, the cost model and the wire format."""
