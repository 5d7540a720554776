"""AU prediction on a user's photos, image folders and videos, as OpenFace-style rows."""
