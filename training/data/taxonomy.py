"""The simulator's built-in product taxonomy: categories → subcategories → product types (with synonyms),
per-category attribute words, colours and pack sizes. Plain data, no logic.

Each product type is ``"canonical|synonym|synonym"``: titles use the canonical name, queries any of them.
"""

from __future__ import annotations

TAXONOMY: dict[str, dict[str, tuple[str, ...]]] = {
    "Power Tools": {
        "Drills": ("drill|drill driver|power drill", "impact driver|impact wrench|impact gun",
                   "hammer drill|rotary hammer|masonry drill"),
        "Saws": ("circular saw|skill saw|circ saw", "jigsaw|jig saw|scroll saw",
                 "reciprocating saw|sawzall|recip saw"),
        "Sanders and Grinders": ("angle grinder|grinder|disc grinder", "orbital sander|random orbit sander|palm sander",
                                 "belt sander|belt grinder|strip sander"),
    },
    "Hand Tools": {
        "Wrenches": ("socket set|ratchet set|socket kit", "adjustable wrench|crescent wrench|spanner",
                     "torque wrench|torque spanner|click wrench"),
        "Screwdrivers and Pliers": ("screwdriver set|driver set|screwdrivers",
                                    "needle nose pliers|long nose pliers|snipe nose pliers",
                                    "wire stripper|cable stripper|wire cutter"),
        "Measuring": ("tape measure|measuring tape|tape rule", "spirit level|bubble level|torpedo level",
                      "digital caliper|vernier caliper|micrometer"),
    },
    "Fasteners and Adhesives": {
        "Screws and Nails": ("wood screws|deck screws|screws", "brad nails|finish nails|nails",
                             "drywall anchors|wall anchors|plastic anchors"),
        "Adhesives": ("epoxy|epoxy glue|two part adhesive", "super glue|cyanoacrylate|instant glue",
                      "wood glue|carpenter glue|pva glue"),
        "Tapes": ("duct tape|gaffer tape|cloth tape", "electrical tape|insulating tape|vinyl tape",
                  "masking tape|painters tape|paper tape"),
    },
    "Electrical": {
        "Wiring": ("extension cord|power cord|extension lead", "wire nuts|wire connectors|twist connectors",
                   "electrical wire|copper wire|building wire"),
        "Lighting": ("led bulb|light bulb|lamp", "work light|flood light|shop light",
                     "flashlight|torch|handheld light"),
        "Testers": ("multimeter|voltmeter|volt meter", "voltage tester|non contact tester|test pen",
                    "outlet tester|receptacle tester|plug tester"),
    },
    "Plumbing": {
        "Pipes and Fittings": ("pvc pipe|plastic pipe|pvc tube", "pipe fitting|pipe elbow|pipe coupling",
                               "compression fitting|ferrule fitting|compression union"),
        "Faucets": ("kitchen faucet|sink faucet|kitchen tap", "shower head|rain shower|shower spray",
                    "faucet cartridge|valve cartridge|tap cartridge"),
        "Plumbing Repair": ("thread seal tape|ptfe tape|plumber tape", "pipe wrench|stillson wrench|plumbing wrench",
                            "drain snake|drain auger|plumbing snake"),
    },
    "Safety": {
        "Protective Wear": ("safety glasses|safety goggles|eye protection", "work gloves|safety gloves|leather gloves",
                            "ear muffs|hearing protection|ear defenders"),
        "Respiratory": ("dust mask|n95 mask|face mask", "half mask respirator|respirator|gas mask",
                        "respirator cartridge|filter cartridge|respirator filter"),
        "First Aid": ("first aid kit|medical kit|emergency kit", "eye wash station|eyewash|eye wash bottle",
                      "fire extinguisher|extinguisher|fire suppressor"),
    },
    "Lab and Scientific": {
        "Glassware": ("beaker|glass beaker|lab beaker", "test tube|culture tube|sample tube",
                      "erlenmeyer flask|conical flask|lab flask"),
        "Lab Instruments": ("digital scale|lab balance|weighing scale", "thermometer|temperature probe|lab thermometer",
                            "ph meter|ph tester|acidity meter"),
        "Lab Consumables": ("pipette tips|micropipette tips|pipet tips", "nitrile gloves|exam gloves|disposable gloves",
                            "petri dish|culture dish|petri plate"),
    },
    "3D Printing": {
        "Filament": ("pla filament|pla|printing filament", "petg filament|petg|petg spool",
                     "abs filament|abs|abs spool"),
        "Printer Parts": ("printer nozzle|hotend nozzle|brass nozzle", "build plate|print bed|bed sheet",
                          "stepper motor|nema 17 motor|printer motor"),
        "Printing Accessories": ("uv resin|resin|printing resin", "filament dryer|dry box|filament storage box",
                                 "scraper tool|print spatula|print removal tool"),
    },
}

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "Power Tools": ("cordless", "brushless", "20v", "18v", "corded", "compact", "variable speed", "heavy duty"),
    "Hand Tools": ("chrome vanadium", "metric", "sae", "magnetic", "ratcheting", "insulated", "stainless",
                   "professional"),
    "Fasteners and Adhesives": ("stainless steel", "zinc plated", "waterproof", "heavy duty", "clear", "quick set",
                                "high strength", "bulk pack"),
    "Electrical": ("outdoor", "12 gauge", "16 gauge", "dimmable", "rechargeable", "waterproof", "grounded",
                   "digital"),
    "Plumbing": ("brass", "chrome", "lead free", "1/2 inch", "3/4 inch", "pull down", "high pressure",
                 "stainless"),
    "Safety": ("anti fog", "ansi z87", "cut resistant", "disposable", "reusable", "niosh approved",
               "osha compliant", "adjustable"),
    "Lab and Scientific": ("borosilicate", "graduated", "autoclavable", "sterile", "250 ml", "500 ml",
                           "high precision", "calibrated"),
    "3D Printing": ("1.75mm", "2.85mm", "1kg", "high speed", "silk", "matte", "hardened steel", "pei"),
}

COLOURS: tuple[str, ...] = ("black", "white", "red", "blue", "yellow", "orange", "gray", "green", "silver")
PACKS: tuple[str, ...] = ("single", "2-pack", "3-pack", "5-pack", "10-pack", "set of 4")

BRAND_SYLLABLES: tuple[str, ...] = (
    "vol", "tek", "max", "dur", "pro", "ray", "kor", "lin", "zen", "tor", "vex", "nor", "bel", "cas", "dex",
    "fen", "gar", "hal", "jax", "kel", "mar", "ost", "pax", "quin", "rho", "sol", "tav", "ulm", "vin", "wex",
)
