"""Everything that returns a smaller model: ``pruning`` (progressive kernel removal), ``removal``
(trivial residual branches) and ``skipnet`` (a network that skips later conv layers per image)."""
