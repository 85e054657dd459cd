"""Stage 1 of D3N (Fig. 3, III-B): the DDPM, its features at three timesteps, the ResVAE (or PCA) that
compresses them, and the latent repository the teacher reads."""
