-- The faceattr run store lives beside Airflow's metadata DB on the same server.
CREATE DATABASE faceattr OWNER airflow;
