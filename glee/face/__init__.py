"""Face geometry: the morphable model, the camera, alignment, detection, landmarks, fitting."""
