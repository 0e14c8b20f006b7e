// loopback.mjs - preloaded into the Portkey gateway by bench/bench.mjs
// (node --import): its start-server listens on every interface and has no
// option for the address; the bench stays on loopback, so a listen() that
// names no host gets 127.0.0.1.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
    if (typeof args[0] === 'number' && (args[1] === undefined || typeof args[1] === 'function')) {
        if (args[1] === undefined) args.splice(1, 1, '127.0.0.1');
        else args.splice(1, 0, '127.0.0.1');
    } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].host) {
        args[0] = { ...args[0], host: '127.0.0.1' };
    }
    return listen.apply(this, args);
};
