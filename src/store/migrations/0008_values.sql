-- 0008: values in the units and ranges docs/schema.md documents.
-- Trip consumption: `avgConsumption` comes in Wh/100 km (electric) and cl/100 km (fuel) (official
-- schema `EnergyConsumption`, docs/api.md "Units"), and was stored as it came, 1000× and 100×
-- the documented kWh/100 km and l/100 km. The reader now converts; the rows stored before are
-- converted here (the raw item in `data` is unchanged).
UPDATE trips
SET electric_avg_consumption = electric_avg_consumption / 1000.0,
    fuel_avg_consumption = fuel_avg_consumption / 100.0
WHERE electric_avg_consumption IS NOT NULL OR fuel_avg_consumption IS NOT NULL;
