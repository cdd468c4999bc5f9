"""A Tornado application with a route of its own and FormForge mounted under /uploads/."""

import argparse
import asyncio
import signal

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from formforge import FormForge, Settings


class HelloHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"hello": "from the host app"})


async def main(port: int, data_dir: str) -> None:
    uploads = FormForge(Settings(storage={"path": data_dir}), prefix="/uploads")
    app = tornado.web.Application([(r"/", HelloHandler), uploads.rule()])
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(app, **uploads.http_options)
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    await uploads.start(url)  # recovers the store, starts the sweeper; URLs in events
    print(f"{url}/uploads/", flush=True)
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await stopping.wait()
    server.stop()
    await uploads.stop()  # in-flight bytes are kept


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default="./data")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.data_dir))
