// A small bot: does its work on a timer and answers /healthz on 127.0.0.1:3000.
const http = require("http");
const fs = require("fs");
const path = require("path");

let ticks = 0;
setInterval(() => {
  ticks += 1;
  fs.writeFileSync(path.join(process.env.HOME || "/tmp", "ticks.txt"), `${ticks}\n`);
}, 5000);

http
  .createServer((req, res) => {
    const ok = req.url === "/healthz";
    res.writeHead(ok ? 200 : 404, { "Content-Type": "application/json" });
    res.end(JSON.stringify(ok ? { ok: true, ticks } : { error: "not found" }));
  })
  .listen(3000, "127.0.0.1", () => console.log(`nodebot: serving /healthz on 127.0.0.1:3000 (pid ${process.pid})`));
