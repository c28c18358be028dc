"""tinyssd-ablate: measured answers to the exercises of D2L's SSD chapter."""
