"""Wire types shared by every service: one module per subject family, versioned."""
