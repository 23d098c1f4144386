"""`headserve train-head`: train a head on the frozen shared backbone, write an artifact."""
