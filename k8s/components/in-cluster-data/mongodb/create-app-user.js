// Run by the mongo image's entrypoint on the first start (empty volume), as the root user from
// Secret mongodb: the application's account, allowed to read and write the GridFS databases.
const username = process.env.MONGO_APP_USERNAME;
const password = process.env.MONGO_APP_PASSWORD;
if (!username || !password) {
  throw new Error("MONGO_APP_USERNAME and MONGO_APP_PASSWORD must be set (Secret mongodb)");
}
db.getSiblingDB("admin").createUser({
  user: username,
  pwd: password,
  roles: [
    { role: "readWrite", db: "videos" },
    { role: "readWrite", db: "mp3s" },
  ],
});
