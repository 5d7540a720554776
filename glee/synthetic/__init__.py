"""The synthetic face world: a renderer for the default morphable face (`render`), labelled
sample sheets (`contact_sheet`) and the writers of synthetic datasets in the real layouts."""
