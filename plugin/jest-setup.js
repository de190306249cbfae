// Jest setup provided by Grafana scaffolding
import './.config/jest-setup';

// react-dom 19's server renderer, which @grafana/ui 13 imports, needs
// MessageChannel; jsdom has none.
import { MessageChannel } from 'node:worker_threads';
if (typeof global.MessageChannel === 'undefined') {
  global.MessageChannel = MessageChannel;
}
