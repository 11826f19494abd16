"""The ClientApp: local training under the mask with the pruning method's hooks, evaluation."""
