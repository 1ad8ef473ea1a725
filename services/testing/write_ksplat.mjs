// A `.ksplat` written by GaussianSplats3D's own SplatBuffer generator, the format's reference writer,
// for the tests that check our reader against it (tests/test_ksplat.py):
//
//     node write_ksplat.mjs LIBRARY SOURCE.ply TARGET.ksplat LEVEL SH_DEGREE
//
// LIBRARY: the path of the library's ES module (it finds three.js beside it). Every splat is kept
// (an alpha threshold of 0), in one section, with the library's default bucket block and size.
import * as fs from 'fs';
import { pathToFileURL } from 'url';

const [library, source, target, level, shDegree] = process.argv.slice(2);
const GaussianSplats3D = await import(pathToFileURL(library).href);
const file = fs.readFileSync(source);
const bytes = file.buffer.slice(file.byteOffset, file.byteOffset + file.byteLength);
const splats = GaussianSplats3D.PlyParser.parseToUncompressedSplatArray(bytes, parseInt(shDegree));
const generator = GaussianSplats3D.SplatBufferGenerator.getStandardGenerator(0, parseInt(level), 0);
const buffer = generator.generateFromUncompressedSplatArray(splats);
fs.writeFileSync(target, Buffer.from(buffer.bufferData));
