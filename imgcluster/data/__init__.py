"""The images: scanning a folder, decoding, the decode cache, worker processes, benchmark sets."""
