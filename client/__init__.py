"""The ClientApp: local training under the mask, importance, evaluation."""
