// Runner per task, chosen by the manifest's `task` (edge/runners/__init__.py's registry).
// A runner class has `static async create(manifest, files, model)` and
// `render(rootElement)`.

import {ImageClassificationRunner} from './image_classification.js';
import {LanguageModelRunner} from './language_modeling.js';
import {TextClassificationRunner} from './text_classification.js';
import {TranslationRunner} from './translation.js';

export const RUNNERS = {
  text_classification: TextClassificationRunner,
  image_classification: ImageClassificationRunner,
  translation: TranslationRunner,
  language_modeling: LanguageModelRunner,
};

export const supportedTasks = () => Object.keys(RUNNERS).sort();
