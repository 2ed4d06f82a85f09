#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d, compose.yaml):
# Orthanc's index and the gateway's state in two databases, each with its own role, as
# orthanc-node.json names them. The passwords come from the environment, never from this file.
set -eu
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v orthanc_password="$ORTHANC_DB_PASSWORD" -v rtgw_password="$RTGW_DB_PASSWORD" <<'SQL'
CREATE ROLE orthanc LOGIN PASSWORD :'orthanc_password';
CREATE ROLE rtgw LOGIN PASSWORD :'rtgw_password';
CREATE DATABASE orthanc OWNER orthanc;
CREATE DATABASE rtgw OWNER rtgw;
SQL
