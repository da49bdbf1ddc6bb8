// FFCV includes <opencv2/opencv.hpp>, which pulls in every OpenCV module; it needs only these two.
#include "opencv2/core.hpp"
#include "opencv2/imgproc.hpp"
