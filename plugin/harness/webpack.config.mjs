// Builds the harness page (harness/dist/): the query and config editors and
// a view of QueryData's frames, with React and @grafana/ui bundled in rather
// than left as the externals Grafana provides, so that a browser can render
// them without a Grafana server. plugin/harness_test.go builds it with
// `npm run harness` and drives it with headless Chromium.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.dirname(fileURLToPath(import.meta.url));

export default {
  mode: 'development',
  // No eval-source-map: the page is read by a test, not debugged.
  devtool: false,
  context: dir,
  entry: { harness: './harness.tsx' },
  output: { path: path.join(dir, 'dist'), filename: '[name].js', publicPath: '/', clean: true },
  cache: { type: 'filesystem', cacheDirectory: path.join(dir, '..', 'node_modules', '.cache', 'harness-webpack') },
  resolve: { extensions: ['.tsx', '.ts', '.js', '.jsx'] },
  performance: { hints: false },
  module: {
    rules: [
      // @grafana/ui's ESM imports some packages (ol) without file extensions.
      { test: /\.m?js$/, resolve: { fullySpecified: false } },
      {
        exclude: /node_modules/,
        test: /\.[tj]sx?$/,
        use: {
          loader: 'swc-loader',
          options: {
            jsc: {
              target: 'es2020',
              parser: { syntax: 'typescript', tsx: true },
              transform: { react: { runtime: 'classic' } },
            },
          },
        },
      },
      { test: /\.css$/, use: ['style-loader', 'css-loader'] },
      { test: /\.(png|jpe?g|gif|svg|woff2?|eot|ttf|otf)$/, type: 'asset/resource' },
    ],
  },
};
