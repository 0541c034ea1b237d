"""The live web console: a bus subscriber, its state, and the pages that show it."""
