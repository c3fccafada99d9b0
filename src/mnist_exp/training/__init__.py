"""The model and its training: the network, fit and its fast paths, kept models, the
compilation cache, interrupts and resume state (heavy: TensorFlow)."""
