"""EuroSAT (RGB): 10 land-use classes named descriptively for prompts ("Annual Crop Land")."""

from plpp.engine import DATASET_REGISTRY

from .base import ClassFolderDataset

EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(ClassFolderDataset):
    """``eurosat/2750/<Class>/`` with ``split_zhou_EuroSAT.json``."""

    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    rename = EUROSAT_NAMES
    layout = ("eurosat/\n"
              "  2750/<AnnualCrop|Forest|...>/<Class>_1.jpg ...\n"
              "  split_zhou_EuroSAT.json")
