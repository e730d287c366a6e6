"""What is tested: the implementations of the mHC pre operator and the registry that finds them."""
