"""Analysis of what a model sees: 1:1 verification (a calibrated probability and a threshold at a chosen FAR),
N:N clustering of unlabelled crops into identities, and pictures that explain why two crops match."""
