-- Runs once, when the postgres volume is empty: one database per service, all owned by
-- POSTGRES_USER. MLflow and Prefect create their tables on start; the gateway creates
-- the prediction log's.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
CREATE DATABASE shipway;
