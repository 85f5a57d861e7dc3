"""constrained-rec: generative recommendation whose decoder can only write catalog titles."""
