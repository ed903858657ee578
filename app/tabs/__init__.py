"""One module per tab; each has ``build(models, model_box)`` that lays the tab out and wires its events."""
