// The mongo service's healthcheck (deploy/compose.yaml), run by mongosh every few seconds:
// the first time, it makes this node the single-node replica set rs0 (MONGO_URI names it);
// it passes once the node is the writable primary. rs.initiate runs once: afterwards
// rs.status() answers, and a data volume that already holds the set keeps it.
try {
  rs.status();
} catch (error) {
  if (error.codeName !== "NotYetInitialized") {
    throw error;
  }
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] });
}
if (!db.hello().isWritablePrimary) {
  quit(1);
}
