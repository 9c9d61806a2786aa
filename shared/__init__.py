"""Code every ClassifyCloud component shares: settings, messages, AWS clients, names, catalogue."""
