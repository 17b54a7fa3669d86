"""faceattr: CelebA facial-attribute classifier as an Airflow pipeline."""
