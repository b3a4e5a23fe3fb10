"""The file MLflow runs to build the face-detector pyfunc when it loads a logged model.

`log_face_detector` logs this file as the model's code (MLflow's "models from code"), so a logged
model holds source that imports `jobs.serving.pyfunc`, not a pickle of the class.
"""

from mlflow.models import set_model

from jobs.serving.pyfunc import FaceDetectorModel

set_model(FaceDetectorModel())
