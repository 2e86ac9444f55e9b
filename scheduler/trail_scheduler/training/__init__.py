"""Training the predictors: collect hidden states through the serving engine, train
and sweep probes, train the prompt predictor, evaluate them as the engine uses them."""
