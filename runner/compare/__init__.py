"""What a smaller quant costs, measured here: KL divergence, top-1 agreement, perplexity, probes, speed."""
